"""The engine: containers, images, and their state, behind one ``Engine`` object (see ``engine``)."""
