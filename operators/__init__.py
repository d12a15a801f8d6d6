"""App-facing operators: collect inputs, call :mod:`fo_plugin`, report. No numeric work here."""

from .clcore import ComputeCLCore
from .curation import AuditSubgroups, ExportCurated, FindNearDuplicates, FindOutliers, FindQualityIssues
from .embeddings import ComputeSSLEmbeddings
from .influence import ComputeSSLInfluence, FindInfluentialTrainingSamples
from .panel import CurationPanel, ShowDuplicateGroup
from .runs import DeleteSSLRun

OPERATORS = [
    ComputeSSLEmbeddings, ComputeCLCore, ComputeSSLInfluence, FindInfluentialTrainingSamples,
    FindNearDuplicates, FindOutliers, FindQualityIssues, AuditSubgroups, ExportCurated, DeleteSSLRun,
    ShowDuplicateGroup, CurationPanel,
]
