"""The ``frakpy`` command line (see ``frakpy.cli.main``)."""
