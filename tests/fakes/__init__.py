"""In-process fakes shared by tests (import with the repository root on sys.path)."""
