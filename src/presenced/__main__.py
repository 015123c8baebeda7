from presenced.cli import main

main()
