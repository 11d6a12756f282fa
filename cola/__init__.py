"""CoLA — Cross-Modal Low-Rank Adaptation (arXiv 2604.03314, ICML 2026): reference implementation."""

__version__ = "0.1.0"
