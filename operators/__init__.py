"""App-facing operators: collect inputs, call :mod:`fo_plugin`, report. No numeric work here."""

from .clcore import ComputeCLCore
from .embeddings import ComputeSSLEmbeddings
from .runs import DeleteSSLRun

OPERATORS = [ComputeSSLEmbeddings, ComputeCLCore, DeleteSSLRun]
