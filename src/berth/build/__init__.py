"""Building images from Dockerfiles (L4): the parser, the build context, the builder and its cache."""
