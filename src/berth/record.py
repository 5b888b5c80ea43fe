"""Value classes for start-up paths: what berth uses of ``dataclasses``, without importing it.

``import dataclasses`` pulls in ``inspect``, ``ast`` and ``tokenize`` (~8 ms), and every
``@dataclass`` then compiles generated methods (~0.5 ms a class). ``berth run`` loads about twenty
such classes (digests, references, descriptors, image configs, snapshots, images), so they use
``@record`` instead: the same declarations (annotations, defaults, ``field(default_factory=...)``,
``frozen``, ``order``, ``__post_init__``, ``replace``) served by one generic ``__init__``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs):  # type checkers only: tells them @record works like @dataclass
        return lambda decorator: decorator

_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Any) -> None:
        self.default = default
        self.default_factory = default_factory


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING) -> Any:
    return Field(default, default_factory)


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = False, order: bool = False) -> Any:
    """Class decorator: an ``__init__`` taking the annotated fields in order, ``__repr__``,
    ``__eq__`` (and ``__hash__`` when frozen), comparisons with ``order``."""

    def wrap(cls: type[T]) -> type[T]:
        # Not inspect.get_annotations: importing inspect is what this module avoids.
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        names = [n for n, a in annotations.items() if not str(a).startswith("ClassVar")]
        defaults: dict[str, Any] = {}
        for n in names:
            if n in cls.__dict__:
                value = cls.__dict__[n]
                if isinstance(value, Field):
                    if value.default_factory is not _MISSING:
                        defaults[n] = value
                        delattr(cls, n)
                        continue
                    value = value.default
                    setattr(cls, n, value)
                defaults[n] = value
        _install(cls, tuple(names), defaults, frozen, order)
        return cls

    return wrap if cls is None else wrap(cls)


def _install(cls: Any, names: tuple[str, ...], defaults: dict[str, Any], frozen: bool, order: bool) -> None:
    post_init = getattr(cls, "__post_init__", None)
    setter = object.__setattr__
    title = cls.__name__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{title}() takes {len(names)} arguments but {len(args)} were given")
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{title}() got an unexpected keyword argument {key!r}")
            if key in values:
                raise TypeError(f"{title}() got multiple values for argument {key!r}")
            values[key] = value
        for n in names:
            if n not in values:
                default = defaults.get(n, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{title}() missing required argument: {n!r}")
                values[n] = default.default_factory() if isinstance(default, Field) else default
            setter(self, n, values[n])
        if post_init is not None:
            post_init(self)

    def key(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in names)

    def __repr__(self: Any) -> str:
        return f"{title}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def __eq__(self: Any, other: Any) -> bool:
        return key(self) == key(other) if other.__class__ is self.__class__ else NotImplemented

    # As dataclasses do: what the class body defines itself is kept.
    own = cls.__dict__
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    for name, method in (("__init__", __init__), ("__repr__", __repr__), ("__eq__", __eq__)):
        if name not in own:
            setattr(cls, name, method)
    cls.__record_fields__ = names
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        cls.__setattr__ = __setattr__
        cls.__delattr__ = __delattr__
        if not explicit_hash:
            cls.__hash__ = lambda self: hash(key(self))
    elif not explicit_hash:
        cls.__hash__ = None
    if order:
        def compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
            def method(self: Any, other: Any) -> Any:
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return op(key(self), key(other))

            return method

        for name, op in (("__lt__", lambda a, b: a < b), ("__le__", lambda a, b: a <= b),
                         ("__gt__", lambda a, b: a > b), ("__ge__", lambda a, b: a >= b)):
            if name not in own:
                setattr(cls, name, compare(op))


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` (``__post_init__`` runs again)."""
    names = obj.__class__.__record_fields__  # type: ignore[attr-defined]
    values = {n: getattr(obj, n) for n in names}
    values.update(changes)
    return obj.__class__(**values)
