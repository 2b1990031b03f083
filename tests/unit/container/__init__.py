"""Tests of frakpy.container: OCI spec building and seccomp."""
