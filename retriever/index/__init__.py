"""The index folder's lifecycle: building, assembling parts, adding and deleting, and
the manifest that describes it."""
