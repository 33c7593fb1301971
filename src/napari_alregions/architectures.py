"""Names of the patch classifiers, without importing torch (the widget lists them at docking)."""

ARCHITECTURES = ("compact", "mobilenet_v2", "resnet18")
