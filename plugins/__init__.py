"""ldreg's built-in plugins, installed as ``ldreg_plugins`` and loaded through the ``ldreg``
entry-point group exactly as third-party plugins are."""
