"""Helpers shared by the pages (Streamlit does not list this folder as a page)."""
