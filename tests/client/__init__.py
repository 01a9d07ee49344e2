"""client tests."""
