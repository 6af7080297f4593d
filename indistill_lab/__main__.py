from .cli import main
from .errors import cli

cli(main)
