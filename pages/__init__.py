"""Dashboard page scripts; a package only so that installs ship them beside `dashboard/`."""
