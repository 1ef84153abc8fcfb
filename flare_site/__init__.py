"""flare_site package."""
