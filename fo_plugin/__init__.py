"""SSL data curation for FiftyOne: the Python API (usable from a notebook, no App needed).

Embeddings:
    :func:`compute_ssl_embeddings` -- SSL embeddings as a field; the default proxy is trained on the images.
Subsets:
    :func:`compute_clcore` -- CL-Core / SAS scores, ranks, latent classes and a budgeted subset.
Influence:
    :func:`compute_ssl_influence` -- label-free self-influence, augmentation loss, duplicate pairs.
    :func:`find_influential_training_samples` -- "what shaped this image": proponents and opponents.
Curation:
    :func:`find_near_duplicates` (:func:`load_duplicate_pairs`: its pairs and their evidence), :func:`find_outliers`,
    :func:`find_quality_issues`, :func:`audit_subgroups`, :func:`export_curated`, :func:`export_plan` (its dry
    run: what would be kept and why).
Runs:
    :func:`list_runs`, :func:`get_run_config`, :func:`load_run_results`, :func:`delete_run`.
Data:
    :func:`load_cifar10`, :func:`load_utkface` -- the bundled real image sets.

Everything heavy is imported on first use, so ``import fo_plugin`` is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"


def compute_ssl_embeddings(samples, embeddings_field="ssl_embedding", backbone="proxy", **kwargs):
    """See :func:`fo_plugin.embeddings.compute_ssl_embeddings`."""
    from .embeddings import compute_ssl_embeddings as f

    return f(samples, embeddings_field, backbone, **kwargs)


def compute_clcore(samples, run_key="clcore", **kwargs):
    """See :func:`fo_plugin.clcore.compute_clcore`."""
    from .clcore import compute_clcore as f

    return f(samples, run_key, **kwargs)


def compute_ssl_influence(samples, run_key="influence", **kwargs):
    """See :func:`fo_plugin.influence.compute_ssl_influence`."""
    from .influence import compute_ssl_influence as f

    return f(samples, run_key, **kwargs)


def find_influential_training_samples(samples, query_ids, influence_run="influence", run_key="shaped", **kwargs):
    """See :func:`fo_plugin.influence.find_influential_training_samples`."""
    from .influence import find_influential_training_samples as f

    return f(samples, query_ids, influence_run, run_key, **kwargs)


def find_near_duplicates(samples, run_key="dups", **kwargs):
    """See :func:`fo_plugin.duplicates.find_near_duplicates`."""
    from .duplicates import find_near_duplicates as f

    return f(samples, run_key, **kwargs)


def load_duplicate_pairs(dataset, run_key="dups", ids=None, columns=False):
    """See :func:`fo_plugin.duplicates.load_duplicate_pairs`."""
    from .duplicates import load_duplicate_pairs as f

    return f(dataset, run_key, ids, columns)


def find_outliers(samples, run_key="outliers", **kwargs):
    """See :func:`fo_plugin.outliers.find_outliers`."""
    from .outliers import find_outliers as f

    return f(samples, run_key, **kwargs)


def find_quality_issues(samples, run_key="quality", **kwargs):
    """See :func:`fo_plugin.quality.find_quality_issues`."""
    from .quality import find_quality_issues as f

    return f(samples, run_key, **kwargs)


def audit_subgroups(samples, group_field, run_key="audit", **kwargs):
    """See :func:`fo_plugin.audit.audit_subgroups`."""
    from .audit import audit_subgroups as f

    return f(samples, group_field, run_key, **kwargs)


def export_curated(samples, **kwargs):
    """See :func:`fo_plugin.export.export_curated`."""
    from .export import export_curated as f

    return f(samples, **kwargs)


def export_plan(samples, **kwargs):
    """See :func:`fo_plugin.export.export_plan`."""
    from .export import export_plan as f

    return f(samples, **kwargs)


def list_runs(dataset, method=None):
    """Keys of this library's runs on ``dataset`` (``method`` e.g. ``"ssl_embeddings"``)."""
    from .runs import list_runs as f

    return f(dataset, method)


def get_run_config(dataset, run_key):
    """The recorded configuration of a run, as a dict."""
    from .runs import get_config

    return get_config(dataset, run_key)


def load_run_results(dataset, run_key):
    """The stored results (counts, timings, ...) of a run, as a dict."""
    from .runs import load_results

    return load_results(dataset, run_key)


def delete_run(dataset, run_key, delete_fields=True):
    """Delete a run, its fields, saved views and artifacts."""
    from .runs import delete_run as f

    return f(dataset, run_key, delete_fields)


def load_cifar10(name="cifar10-ssl", split="train", per_class=500, **kwargs):
    """See :func:`fo_plugin.data.load_cifar10`."""
    from .data import load_cifar10 as f

    return f(name, split, per_class, **kwargs)


def load_utkface(name="utkface-ssl", balanced=True, limit=None, **kwargs):
    """See :func:`fo_plugin.data.load_utkface`."""
    from .data import load_utkface as f

    return f(name, balanced, limit, **kwargs)
