"""`python -m pconv_deploy.cli`: the console script `pconv`."""

from pconv_deploy.cli import main

main()
