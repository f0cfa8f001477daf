defmodule KraitTest do
  # The public API against a pool of real Python workers (adapters.showcase) over real gRPC.
  use ExUnit.Case, async: true
  use Krait.Test.Contract

  @moduletag timeout: 60_000

  setup_all do
    %{pool: start_pool!(size: 2), worker_ids: ~r/KraitTestPool/}
  end
end
