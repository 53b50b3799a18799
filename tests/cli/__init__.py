"""Tests of the `registry` command as a whole: bad input on every command, start-up cost."""
