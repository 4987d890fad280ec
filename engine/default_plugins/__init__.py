"""Built-in plugins: registered like any installed plugin, their hooks `trylast` so installed plugins win."""
