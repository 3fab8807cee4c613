"""The class that ``--model NAME`` or ``--dataset_mode NAME`` names when it is not a built-in: a user's own.

Looked up as the reference looks up its own classes, so that a user's files keep their names: the module
``NAME_model`` (``NAME_dataset``) of the ``models`` (``data``) package of the working directory, else a top-level
module of that name anywhere on ``sys.path``; in it, the subclass of fastp2p's base class whose name, without case and
underscores, is NAME + "model" (``my_net`` -> ``MyNetModel``). ``package.module:Class`` names a class directly.
Every failure is one OptionError line that says where it looked.
"""

import difflib
import functools
import importlib
import importlib.util
import os
import sys

from fastp2p.errors import OptionError

PACKAGES = {"model": "models", "dataset": "data"}
"""the working directory's package the reference keeps each kind of class in"""
FLAGS = {"model": "--model", "dataset": "--dataset_mode"}


def working_directory_on_path():
    """Put the working directory on sys.path (last, so it shadows nothing), where ``python train.py`` has it: the
    loader's spawned workers inherit sys.path and so import the user's dataset module too."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_if_present(module_name, flag, name):
    """The module ``module_name``, or None when neither it nor its package exists; an error inside the user's
    module (a reference import left unchanged) is one line naming it."""
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except ModuleNotFoundError:  # its package does not exist
        return None
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # the user's own code: any error it raises on import is theirs to see, in one line
        text = str(error).splitlines()[0] if str(error) else ""
        raise OptionError(f"{flag} {name}: importing {module_name} failed: {type(error).__name__}: {text} (a file "
                          f"written for the reference imports BaseModel from fastp2p.models and networks from "
                          f"fastp2p)") from None


def class_named(module, name, kind, base):
    """The subclass of ``base`` in ``module`` whose name matches NAME + kind without case and underscores."""
    target = (name + kind).replace("_", "").lower()
    for attribute, value in vars(module).items():
        if attribute.lower() == target and isinstance(value, type) and issubclass(value, base):
            return value
    expected = "".join(part.capitalize() for part in name.split("_")) + kind.capitalize()
    raise OptionError(f"{FLAGS[kind]} {name}: {module.__file__} defines no subclass of {base.__module__}."
                      f"{base.__name__} named {expected} (the name is matched without case and underscores)")


def dotted_class(reference, kind, base):
    """The class of ``package.module:Class``, which must subclass ``base``."""
    flag = FLAGS[kind]
    module_name, _, class_name = reference.partition(":")
    if not module_name or not class_name:
        raise OptionError(f"{flag} {reference}: write package.module:Class")
    module = import_if_present(module_name, flag, reference)
    if module is None:
        raise OptionError(f"{flag} {reference}: no module {module_name} importable from {os.getcwd()} or sys.path")
    value = getattr(module, class_name, None)
    if not (isinstance(value, type) and issubclass(value, base)):
        raise OptionError(f"{flag} {reference}: {module.__file__} has no class {class_name} that subclasses "
                          f"{base.__module__}.{base.__name__}")
    return value


@functools.lru_cache(maxsize=None)
def find_class(name, kind, builtins, base):
    """The class ``name`` means: a built-in (``builtins``: a tuple of (name, class)), a ``package.module:Class``, or
    the reference's module and class names (see the module docstring). ``kind`` is 'model' or 'dataset'."""
    known = dict(builtins)
    if name in known:
        return known[name]
    working_directory_on_path()
    if ":" in name:
        return dotted_class(name, kind, base)
    flag, module_name = FLAGS[kind], f"{name}_{kind}"
    candidates = (f"{PACKAGES[kind]}.{module_name}", module_name)
    if all(part.isidentifier() for part in name.split(".")):
        for candidate in candidates:
            module = import_if_present(candidate, flag, name)
            if module is not None:
                return class_named(module, name, kind, base)
    guess = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    raise OptionError(f"unknown {flag} {name}{hint}: not a built-in ({', '.join(known)}), and no module "
                      f"{' or '.join(candidates)} importable from {os.getcwd()} or sys.path (or give "
                      f"package.module:Class)")
