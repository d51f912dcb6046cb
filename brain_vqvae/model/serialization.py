"""The package name under which every model class is registered with Keras.

A `.keras` file names each custom class as "brain_vqvae>ClassName" (`VectorQuantizer`, `VQVAE`,
`MaskedConv2D`, `PixelCNN`); `keras.saving.load_model` finds the class by that name once the
class is imported. Changing this name or a class name breaks the loading of saved models.
"""

SERIALIZATION_PACKAGE = "brain_vqvae"
