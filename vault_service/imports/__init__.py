"""Bulk import of a legacy export (`vault-service import`): see importer.py."""
