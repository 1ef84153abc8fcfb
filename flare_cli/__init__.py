"""The ``flare`` console script: dispatches to each package's ``main(argv)``."""
