# Logs are captured per test and shown only when a test fails; pools started in setup_all log
# outside any test, so only warnings and errors are kept.
Logger.configure(level: :warning)
ExUnit.start(capture_log: true)
