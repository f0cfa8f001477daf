defmodule Krait.WorkerStderrFileTest do
  # Where a starting worker's stderr goes over the link: a file in the shared temporary directory, so it must
  # be one no other local user could have made, guessed or read.
  use ExUnit.Case, async: true

  test "a private file: a random name, made exclusively, mode 0600, empty" do
    a = Krait.Worker.private_file("krait-test-", ".stderr")
    b = Krait.Worker.private_file("krait-test-", ".stderr")

    try do
      assert a != b
      assert Path.dirname(a) == System.tmp_dir!()
      assert Path.basename(a) =~ ~r/^krait-test-[A-Za-z0-9_-]{16}\.stderr$/
      {:ok, %File.Stat{type: :regular, size: 0, mode: mode}} = File.lstat(a)
      assert Bitwise.band(mode, 0o777) == 0o600
    after
      File.rm(a)
      File.rm(b)
    end
  end
end
