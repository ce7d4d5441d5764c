"""Running the exported network on devices (the Raspberry Pi AI Camera)."""
