"""flare_server package."""
