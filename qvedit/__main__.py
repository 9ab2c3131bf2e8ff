from qvedit.cli.main import main

main()
