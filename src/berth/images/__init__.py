"""Images: the image store (:mod:`.store`), layer unpacking (:mod:`.layer`), layer diffs (:mod:`.diff`),
and OCI layout / docker-archive import and export (:mod:`.archive`).

Nothing is imported here, so that a command pays only for the modules it uses.
"""
