from iceward.cli import main

main()
