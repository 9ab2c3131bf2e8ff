from qvedit.main import main

main()
