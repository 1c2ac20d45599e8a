"""Task data generators and the small datasets they produce."""
