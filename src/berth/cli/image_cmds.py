"""``berth`` image commands beyond the basics in ``main`` (push, save, load, history, login...).

Each ``cmd_*`` method is found by ``main``'s dispatcher through the ``Cli`` class, which mixes this in.
Transfers (pull, push) show one progress bar per blob on a terminal (``rich``, imported only then) and
one plain line per change of a blob's state otherwise, as Docker does when its output is a pipe.
"""

from __future__ import annotations

import sys

from berth.cli.flags import Flag, parse
from berth.errors import InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.engine.engine import Engine
    from berth.images.store import Image
    from berth.oci.reference import Reference
    from berth.registry.client import Progress

_STATUS_WORDS = {"exists": "Already exists", "downloading": "Downloading", "uploading": "Pushing",
                 "mounted": "Mounted", "done": "Complete", "retrying": "Retrying"}


def _short(digest: object) -> str:
    return str(digest).partition(":")[2][:12]


class _Progress:
    """What both renderings share: a lock (callbacks come from the pull's worker threads), whether
    bytes really moved, and the word for each state."""

    def __init__(self, done_word: str) -> None:
        import threading

        self._lock = threading.Lock()
        self._done_word = done_word
        self.transferred = False

    def _note(self, p: Progress) -> tuple[str, str]:
        """Record the event; return the blob's short id and the word for its state (under the lock)."""
        if p.status in ("downloading", "uploading"):
            self.transferred = True
        word = self._done_word if p.status == "done" else _STATUS_WORDS.get(p.status, p.status)
        return _short(p.digest), word


class _PlainProgress(_Progress):
    """One line per blob and state change (``abc123def456: Downloading``), for pipes and logs."""

    def __init__(self, done_word: str) -> None:
        super().__init__(done_word)
        self._seen: dict[str, str] = {}

    def __call__(self, p: Progress) -> None:
        with self._lock:
            key, word = self._note(p)
            if self._seen.get(key) == p.status:
                return
            self._seen[key] = p.status
            sys.stdout.write(f"{key}: {word}\n")
            sys.stdout.flush()

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _BarProgress(_Progress):
    """Per-blob progress bars with ``rich`` (a terminal only)."""

    def __init__(self, done_word: str) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        super().__init__(done_word)
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), transient=False)
        self._tasks: dict[str, Any] = {}

    def __call__(self, p: Progress) -> None:
        with self._lock:
            key, word = self._note(p)
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self._bars.add_task(f"{key}: {word}", total=p.total or None)
            completed = p.total if p.status in ("exists", "done", "mounted") else p.done
            self._bars.update(task, description=f"{key}: {word}", completed=completed, total=p.total or None)

    def __enter__(self) -> _BarProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()


def _progress(done_word: str, quiet: bool) -> _PlainProgress | _BarProgress | None:
    if quiet:
        return None
    if sys.stdout.isatty():
        try:
            return _BarProgress(done_word)
        except ImportError:
            pass
    return _PlainProgress(done_word)


def _render_rows(cli: ImageCommands, rows: list[dict[str, Any]], template: str | None) -> bool:
    """``--format``: print and say so; else leave the table to the caller."""
    from berth.cli import format as fmt

    text = fmt.render_rows(rows, template)
    if text is not None:
        cli.out(text)
    return text is not None


def _repo_tags(img: Image) -> list[tuple[str, str]]:
    """The image's names as Docker's REPOSITORY and TAG columns; ``<none>`` twice for a dangling one."""
    out = []
    for ref in img.references():
        if ref.tag is not None:
            out.append((ref.familiar_name, ref.tag))
    return out or [("<none>", "<none>")]


def _repo_digests(img: Image) -> dict[str, str]:
    """The image's digest in each repository it was pulled from or pushed to, by the repository's
    name as the REPOSITORY column prints it (``busybox``, ``user/app``, ``localhost:5000/app``)."""
    from berth.oci.reference import Reference

    out: dict[str, str] = {}
    for entry in img.repo_digests:
        name, _, digest = entry.partition("@")
        out.setdefault(Reference.parse(name, default_tag=None).familiar_name, digest)
    return out


def _image_filter(engine: Engine, filters: list[str], wanted: str | None) -> Callable[[Image, str, str], bool]:
    """A predicate over (image, repository, tag) rows from ``--filter`` and the REPOSITORY[:TAG] argument."""

    checks: list[Callable[[Image, str, str], bool]] = []
    for spec in filters:
        key, eq, value = spec.partition("=")
        if not eq:
            raise InvalidArgument(f"bad format of filter (expected name=value): {spec}")
        if key == "dangling":
            checks.append(_dangling_filter(value))
        elif key == "reference":
            checks.append(_reference_filter(value))
        elif key in ("before", "since"):
            checks.append(_age_filter(engine.image_store.get(value), key == "since"))
        elif key == "label":
            checks.append(_label_filter(engine, value))
        else:
            raise InvalidArgument(f"invalid filter '{key}'")
    if wanted is not None:
        from berth.oci.reference import Reference

        ref = Reference.parse(wanted, default_tag=None)
        checks.append(lambda _i, repo, tag: repo == ref.familiar_name and (ref.tag is None or tag == ref.tag))
    return lambda img, repo, tag: all(check(img, repo, tag) for check in checks)


def _dangling_filter(value: str) -> Callable[[Image, str, str], bool]:
    if value.lower() not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"invalid filter 'dangling={value}'")
    want = value.lower() in ("true", "1")
    return lambda img, _repo, _tag: (not img.names) == want


def _reference_filter(pattern: str) -> Callable[[Image, str, str], bool]:
    import fnmatch

    return lambda _img, repo, tag: repo != "<none>" and (
        fnmatch.fnmatchcase(repo, pattern) or fnmatch.fnmatchcase(f"{repo}:{tag}", pattern))


def _age_filter(pivot: Image, later: bool) -> Callable[[Image, str, str], bool]:
    def key(img: Image) -> tuple[str, float]:
        return img.created or "", img.added

    return lambda img, _repo, _tag: img.id != pivot.id and (key(img) > key(pivot)) == later


def _label_filter(engine: Engine, spec: str) -> Callable[[Image, str, str], bool]:
    name, has_value, value = spec.partition("=")

    def check(img: Image, _repo: str, _tag: str) -> bool:
        config = engine.image_store.config(img).config
        labels = (config.labels if config is not None else None) or {}
        return name in labels and (not has_value or labels[name] == value)

    return check


def _created_since(created: str | None) -> str:
    if not created:
        return "N/A"
    from berth.cli import format as fmt
    from berth.engine.engine import _parse_time

    try:
        return fmt.ago(_parse_time(created.split("+")[0]))
    except ValueError:
        return "N/A"


class ImageCommands:
    """Mixed into ``cli.main.Cli``: ``self.engine``, ``self.out`` and ``parse`` are available."""

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...

        def out(self, text: str) -> None: ...

        def cmd_rmi(self, argv: list[str]) -> int: ...

        def cmd_tag(self, argv: list[str]) -> int: ...

        def cmd_import(self, argv: list[str]) -> int: ...

    # ------------------------------------------------------------------ registry

    def cmd_pull(self, argv: list[str]) -> int:
        from berth.oci.reference import Reference

        opts, rest = parse(argv, [Flag("platform", "platform", True), Flag("quiet,q", "quiet"),
                                  Flag("all-tags,a", "all_tags")], "pull")
        if len(rest) != 1:
            raise InvalidArgument('"berth pull" requires exactly 1 argument: the image')
        text = rest[0]
        quiet = bool(opts.get("quiet"))
        tagged = ":" in text.rsplit("/", 1)[-1] or "@" in text
        if opts.get("all_tags"):
            # docker pull -a: every tag of the repository, one after the other, then the repository's name.
            if tagged:
                raise InvalidArgument("tag can't be used with --all-tags/-a")
            repo_ref = Reference.parse(text, default_tag=None)
            tags = self.engine.tags(text)
            if not tags:
                raise NotFound(f"repository {repo_ref.name} has no tags")
            transferred = False
            for tag in tags:
                transferred |= self._pull_one(repo_ref.with_tag(tag), str(repo_ref.with_tag(tag)), opts, quiet)
            if not quiet:
                state = "Downloaded newer image for" if transferred else "Image is up to date for"
                self.out(f"Status: {state} {repo_ref.familiar_name}\n")
            self.out(f"{repo_ref.name}\n")
            return 0
        ref = Reference.parse(text)
        if not quiet and not tagged:
            self.out("Using default tag: latest\n")
        transferred = self._pull_one(ref, text, opts, quiet)
        if not quiet:
            state = "Downloaded newer image for" if transferred else "Image is up to date for"
            self.out(f"Status: {state} {ref.familiar()}\n")
        self.out(f"{ref}\n")
        return 0

    def _pull_one(self, ref: Reference, text: str, opts: dict[str, Any], quiet: bool) -> bool:
        """Pull one reference with Docker's lines (and bars on a terminal); whether anything was downloaded."""
        if not quiet:
            repo = ref.familiar_name if ref.domain == "docker.io" else ref.path
            self.out(f"{ref.tag or ref.digest}: Pulling from {repo}\n")
            sys.stdout.flush()
        bars = _progress("Pull complete", quiet)
        if bars is None:
            img = self.engine.pull(text, opts.get("platform"))
        else:
            with bars:
                img = self.engine.pull(text, opts.get("platform"), bars)
        if not quiet:
            self.out(f"Digest: {img.index_digest or img.manifest_digest}\n")
        return bars is not None and bars.transferred

    def cmd_push(self, argv: list[str]) -> int:
        from berth.oci.reference import Reference

        opts, rest = parse(argv, [Flag("quiet,q", "quiet"), Flag("all-tags,a", "all_tags"),
                                  Flag("platform", "platform", True)], "push")
        if len(rest) != 1:
            raise InvalidArgument('"berth push" requires exactly 1 argument: the image')
        ref = Reference.parse(rest[0])
        quiet = bool(opts.get("quiet"))
        if not quiet:
            self.out(f"The push refers to repository [{ref.name}]\n")
            sys.stdout.flush()
        bars = _progress("Pushed", quiet)
        if bars is None:
            result = self.engine.push(rest[0])
        else:
            with bars:
                result = self.engine.push(rest[0], bars)
        if quiet:
            self.out(f"{ref}\n")
        else:
            self.out(f"{ref.tag or ref.digest}: digest: {result.digest} size: {result.size}\n")
        return 0

    def cmd_login(self, argv: list[str]) -> int:
        import os

        opts, rest = parse(argv, [Flag("username,u", "username", True), Flag("password,p", "password", True),
                                  Flag("password-stdin", "password_stdin")], "login")
        if len(rest) != 1:
            raise InvalidArgument('"berth login" requires exactly 1 argument: the registry')
        username = opts.get("username", "")
        password = opts.get("password")
        if opts.get("password_stdin"):
            if password is not None:
                raise InvalidArgument("--password and --password-stdin are mutually exclusive")
            if not username:
                raise InvalidArgument("must provide --username with --password-stdin")
            password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        elif password is not None:
            sys.stderr.write("WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n")
        if not username or password is None:
            if not os.isatty(0):
                raise InvalidArgument("cannot prompt for credentials: stdin is not a terminal "
                                      "(use -u and --password-stdin)")
            if not username:
                username = input("Username: ").strip()
            if password is None:
                import getpass

                password = getpass.getpass("Password: ")
        if not password:
            raise InvalidArgument("password is required")
        self.engine.login(rest[0], username, password)
        self.out("Login Succeeded\n")
        return 0

    def cmd_logout(self, argv: list[str]) -> int:
        from berth.registry.auth import normalize_registry

        _, rest = parse(argv, [], "logout")
        if len(rest) != 1:
            raise InvalidArgument('"berth logout" requires exactly 1 argument: the registry')
        host = normalize_registry(rest[0])
        if self.engine.logout(host):
            self.out(f"Removing login credentials for {host}\n")
        else:
            self.out(f"Not logged in to {host}\n")
        return 0

    # ------------------------------------------------------------------ files

    def cmd_save(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("output,o", "output", True), Flag("format", "format", True),
                                  Flag("quiet,q", "quiet")], "save")
        if not rest:
            raise InvalidArgument('"berth save" requires at least 1 argument: the image')
        form = opts.get("format", "docker-archive")
        from berth.images.archive import FORMATS

        if form not in FORMATS:
            raise InvalidArgument(f"invalid --format {form!r}: use one of {', '.join(FORMATS)}")
        output = opts.get("output")
        if output:
            self.engine.save(rest, output, form)
            return 0
        if form == "oci-dir":
            raise InvalidArgument("--format oci-dir needs -o DIRECTORY")
        if sys.stdout.isatty():
            raise InvalidArgument("cowardly refusing to save to a terminal: use the -o flag or redirect")
        sys.stdout.flush()
        self.engine.save(rest, sys.stdout.buffer, form)
        sys.stdout.buffer.flush()
        return 0

    def cmd_load(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("input,i", "input", True), Flag("quiet,q", "quiet")], "load")
        if rest:
            raise InvalidArgument('"berth load" accepts no arguments (use -i FILE or stdin)')
        source = opts.get("input")
        if source:
            images = self.engine.load(source)
        else:
            if sys.stdin.isatty():
                raise InvalidArgument("requested load from stdin, but stdin is a terminal: use -i FILE or redirect")
            images = self.engine.load(sys.stdin.buffer)
        from berth.oci.reference import Reference

        for img in images:
            if img.names:
                self.out("".join(f"Loaded image: {Reference.parse(n).familiar()}\n" for n in img.names))
            else:
                self.out(f"Loaded image ID: {img.id}\n")
        return 0

    # ------------------------------------------------------------------ inspection

    def cmd_history(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("no-trunc", "no_trunc"), Flag("quiet,q", "quiet"),
                                  Flag("format", "format", True), Flag("human,H", "human", True)], "history")
        if len(rest) != 1:
            raise InvalidArgument('"berth history" requires exactly 1 argument: the image')
        no_trunc = bool(opts.get("no_trunc"))
        rows = []
        for e in self.engine.history(rest[0]):
            ident = e["id"]
            if ident != "<missing>" and not no_trunc:
                ident = ident.partition(":")[2][:12]
            created_by = e["created_by"]
            if not no_trunc and len(created_by) > 45:
                created_by = created_by[:44] + "…"
            rows.append({"ID": ident, "CreatedSince": _created_since(e["created"]), "CreatedAt": e["created"] or "",
                         "CreatedBy": created_by, "Size": fmt.size(e["size"]), "Comment": e["comment"]})
        if opts.get("quiet"):
            self.out("".join(r["ID"] + "\n" for r in rows))
            return 0
        if _render_rows(self, rows, opts.get("format")):
            return 0
        self.out(fmt.table([[r["ID"], r["CreatedSince"], r["CreatedBy"], r["Size"], r["Comment"]] for r in rows],
                           ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]))
        return 0

    def cmd_image_inspect(self, argv: list[str]) -> int:
        import json

        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True)], "image inspect")
        if not rest:
            raise InvalidArgument('"berth image inspect" requires at least 1 argument')
        found = [self.engine.image_inspect(ref) for ref in rest]
        template = opts.get("format")
        if template and template != "json":
            self.out("".join(fmt.render(template, obj) + "\n" for obj in found))
        else:
            self.out(json.dumps(found, indent=4) + "\n")
        return 0

    def cmd_image_prune(self, argv: list[str]) -> int:
        from berth.cli import format as fmt
        from berth.oci.reference import Reference

        opts, rest = parse(argv, [Flag("all,a", "all"), Flag("force,f", "force"),
                                  Flag("filter", "filter", True, True)], "image prune")
        if rest:
            raise InvalidArgument('"berth image prune" accepts no arguments')
        if opts.get("filter"):
            raise InvalidArgument("--filter is not supported yet")
        everything = bool(opts.get("all"))
        if not opts.get("force"):
            what = ("all images without at least one container associated to them" if everything
                    else "all dangling images")
            self.out(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
            sys.stdout.flush()
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                return 0
        report = self.engine.prune_images(all=everything)
        if report.untagged or report.deleted:
            self.out("Deleted Images:\n")
            self.out("".join(f"untagged: {Reference.parse(n).familiar()}\n" for n in report.untagged))
            self.out("".join(f"deleted: {d}\n" for d in report.deleted))
            self.out("\n")
        self.out(f"Total reclaimed space: {fmt.size(report.reclaimed)}\n")
        return 0

    def cmd_images(self, argv: list[str]) -> int:
        """``berth images [REPOSITORY[:TAG]]``: Docker's columns (``--digests`` adds DIGEST), ``-q``,
        ``--no-trunc``, ``--format`` (json, table, template), ``-a`` and ``--filter`` (dangling, reference,
        before, since, label). Newest first, as Docker lists them."""
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("quiet,q", "quiet"), Flag("all,a", "all"), Flag("format", "format", True),
                                  Flag("digests", "digests"), Flag("no-trunc", "no_trunc"),
                                  Flag("filter,f", "filter", True, multi=True)], "images")
        if len(rest) > 1:
            raise InvalidArgument('"berth images" accepts at most 1 argument: [REPOSITORY[:TAG]]')
        keep = _image_filter(self.engine, list(opts.get("filter") or []), rest[0] if rest else None)
        store = self.engine.image_store
        hidden = set() if opts.get("all") else self.engine.build_intermediates()
        images = sorted(store.images(), key=lambda i: (i.created or "", i.added), reverse=True)
        rows = []
        for img in images:
            if not img.names and str(img.id) in hidden:
                continue  # a build step's intermediate image: hidden as Docker hides them (-a shows them)
            image_id = str(img.id) if opts.get("no_trunc") else img.short_id
            size = fmt.size(store.size(img))
            digests = _repo_digests(img)
            for repo, tag in _repo_tags(img):
                if not keep(img, repo, tag):
                    continue
                digest = digests.get(repo, "<none>")
                rows.append({"Containers": "N/A", "CreatedAt": img.created or "", "CreatedSince":
                             _created_since(img.created), "Digest": digest, "ID": image_id, "Repository": repo,
                             "SharedSize": "N/A", "Size": size, "Tag": tag, "UniqueSize": "N/A",
                             "VirtualSize": size})
        if opts.get("quiet"):
            self.out("".join(dict.fromkeys(r["ID"] + "\n" for r in rows)))
            return 0
        if _render_rows(self, rows, opts.get("format")):
            return 0
        columns = ["Repository", "Tag", *(["Digest"] if opts.get("digests") else []), "ID", "CreatedSince", "Size"]
        heads = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
                 "CreatedSince": "CREATED", "Size": "SIZE"}
        self.out(fmt.table([[r[c] for c in columns] for r in rows], [heads[c] for c in columns]))
        return 0

    def cmd_image(self, argv: list[str]) -> int:
        """``berth image SUBCOMMAND``: the same commands, grouped as Docker groups them."""
        table = {"ls": self.cmd_images, "list": self.cmd_images, "inspect": self.cmd_image_inspect,
                 "prune": self.cmd_image_prune, "rm": self.cmd_rmi, "remove": self.cmd_rmi, "tag": self.cmd_tag,
                 "pull": self.cmd_pull, "push": self.cmd_push, "save": self.cmd_save, "load": self.cmd_load,
                 "history": self.cmd_history, "import": self.cmd_import}
        if not argv or argv[0] in ("-h", "--help"):
            self.out("Usage: berth image COMMAND\n\nCommands:\n  " + "\n  ".join(sorted(table)) + "\n")
            return 0 if argv else 125
        handler = table.get(argv[0])
        if handler is None:
            raise InvalidArgument(f"unknown command: \"berth image {argv[0]}\"\nSee 'berth image --help'.")
        return int(handler(argv[1:]))

    # ------------------------------------------------------------------ system

    def cmd_system(self, argv: list[str]) -> int:
        if not argv or argv[0] in ("-h", "--help"):
            self.out("Usage: berth system COMMAND\n\nCommands:\n  info\n  df\n  prune\n  boot\n")
            return 0 if argv else 125
        handler = getattr(self, "cmd_system_" + argv[0], None) if argv[0].isalpha() else None
        if handler is None:
            raise InvalidArgument(f"unknown command: \"berth system {argv[0]}\"\nSee 'berth system --help'.")
        return int(handler(argv[1:]))

    def cmd_system_boot(self, argv: list[str]) -> int:
        """For an init system after a reboot: restart the always and unless-stopped containers."""
        parse(argv, [], "system boot")
        for cid in self.engine.boot():
            self.out(cid + "\n")
        return 0

    def cmd_system_df(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format", "format", True), Flag("verbose,v", "verbose")], "system df")
        if rest:
            raise InvalidArgument('"berth system df" accepts no arguments')
        rows = []
        for r in self.engine.disk_usage():
            percent = f" ({r.reclaimable * 100 // r.size}%)" if r.size else ""
            rows.append({"Type": r.type, "TotalCount": str(r.total), "Active": str(r.active),
                         "Size": fmt.size(r.size), "Reclaimable": fmt.size(r.reclaimable) + percent})
        if _render_rows(self, rows, opts.get("format")):
            return 0
        self.out(fmt.table([[r["Type"], r["TotalCount"], r["Active"], r["Size"], r["Reclaimable"]] for r in rows],
                           ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]))
        return 0
