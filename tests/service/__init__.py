"""service tests."""
