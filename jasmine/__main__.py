"""``python -m jasmine`` is the ``jasmine`` command."""

from jasmine.cli import main

main()
