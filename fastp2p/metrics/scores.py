"""A scoring's values: the pair metrics' running sums and the sets' feature distances, and their printed lines."""

from collections import OrderedDict

from fastp2p.metrics.pairs import PAIR_METRICS


class Scores:
    """Running sums of the pair metrics (on the device, read once at the end) and the sets' feature distances."""

    def __init__(self, distances=None):
        self.distances = distances
        self.sums = OrderedDict()
        self.pairs = 0

    def add_pairs(self, fake, real):
        for name, metric in PAIR_METRICS.items():
            self.sums[name] = self.sums.get(name, 0) + metric(fake, real).sum()
        self.pairs += len(fake)

    def add_set(self, images, real):
        if self.distances is not None:
            self.distances.update(images, real)

    def result(self):
        """name -> float, the pair metrics first (when there were pairs), then FID and KID."""
        values = OrderedDict((name, float(total) / self.pairs) for name, total in self.sums.items())
        if self.distances is not None:
            values.update(self.distances.compute())
        return values


def format_scores(values):
    """One ``name value`` line per metric."""
    return "\n".join(f"{name} {value:.4f}" if name in ("l1", "kid") else f"{name} {value:.3f}"
                     for name, value in values.items())
