"""image-search-engine: search by image on Ray Serve. Ray-free core plus Serve deployments."""
