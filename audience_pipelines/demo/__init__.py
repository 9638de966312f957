"""Synthetic demo data."""

from audience_pipelines.demo.warehouse import DEMO_REFERENCE_DATE, create_demo_warehouse, ensure_demo_warehouse

__all__ = ["DEMO_REFERENCE_DATE", "create_demo_warehouse", "ensure_demo_warehouse"]
