"""End-to-end orchestrators: they run harvest, train and eval together (demo, reproduce)."""
