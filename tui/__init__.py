"""The Textual app of `registry tui` (`tui.app.RegistryApp`): the CLI's service functions,
on screens. Importing this package imports nothing; `tui.app` imports textual."""
