"""A run's options: the frozen groups of options/groups.py, parsed once, read by every module and never changed.

``opt.data.batch_size`` reads a group; ``opt.batch_size`` reads the same value by its flag's name, as the reference's
namespace does, so a model written for the reference reads its options unchanged. A value that is only known once
the run starts (the seed a run draws, the built-in dataset's folder) makes a new Options with ``replace``.
"""

import dataclasses

from fastp2p.options.groups import (FLAG_GROUP, GROUPS, CompatibilityOptions, DataOptions, EngineOptions,
                                    InferenceOptions, ModelOptions, MonitoringOptions, RunOptions, TrainingOptions)


@dataclasses.dataclass(frozen=True)
class Options:
    command: str  # "train" or "test"
    run: RunOptions
    model_options: ModelOptions
    data: DataOptions
    training: TrainingOptions
    inference: InferenceOptions
    monitoring: MonitoringOptions
    engine: EngineOptions
    compatibility: CompatibilityOptions
    defaults: dict  # flag -> its default in this command's parser, for the options table
    listed: tuple  # the names the options table lists (this command's flags), in its order

    @property
    def isTrain(self):  # the reference's name
        return self.command == "train"

    def __getattr__(self, name):
        """A flag's value by its name (only reached for names that are not attributes of Options itself)."""
        if name.startswith("__") or "model_options" not in self.__dict__:
            raise AttributeError(name)  # dunder look-ups, and an instance still being unpickled
        group = FLAG_GROUP.get(name)
        if group is not None:
            return getattr(self.__dict__[group], name)
        extra = self.__dict__["model_options"].extra
        if name in extra:
            return extra[name]
        raise AttributeError(f"no option {name!r}")

    def values(self):
        """name -> value of every option the table lists."""
        return {name: getattr(self, name) for name in self.listed}

    def replace(self, **changes):
        """A new Options with ``changes`` (flag name -> value) made in their groups."""
        by_group = {}
        for name, value in changes.items():
            group = FLAG_GROUP.get(name)
            if group is None:
                extra = dict(self.model_options.extra)
                if name not in extra:
                    raise AttributeError(f"no option {name!r}")
                extra[name] = value
                group, name, value = "model_options", "extra", extra
            by_group.setdefault(group, {})[name] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **fields)
                                            for group, fields in by_group.items()})


def build_options(values, command, defaults, listed):
    """Options of ``command`` from the parsed ``values`` (flag name -> value): each group takes its fields, the
    fields this command has no flag for keep their default for it, the rest are the model's own flags."""
    values = dict(values)
    groups = {}
    for group, cls in GROUPS.items():
        fields = {}
        for field in dataclasses.fields(cls):
            if field.name == "extra":
                continue
            if field.name in values:
                fields[field.name] = values.pop(field.name)
            elif command == "test":
                fields[field.name] = field.metadata["test_default"]
        groups[group] = cls(**fields)
    groups["model_options"] = dataclasses.replace(groups["model_options"], extra=values)
    return Options(command=command, defaults=defaults, listed=tuple(listed), **groups)
