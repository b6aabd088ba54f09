from flexcore import FlexCore

raise RuntimeError("this module cannot be imported")
