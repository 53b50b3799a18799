"""Widgets shared by the screens: the confirmation dialog, the virtual table, gate progress."""
