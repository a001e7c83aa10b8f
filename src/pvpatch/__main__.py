from pvpatch.cli import main

main()
