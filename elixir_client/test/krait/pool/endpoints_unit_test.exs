defmodule Krait.Pool.EndpointsUnitTest do
  # Krait.Pool.Endpoints' pure parts: what a resolution changes, and a failure's endpoint errors.
  use ExUnit.Case, async: true

  alias Krait.Pool.Endpoints

  defp ep(key), do: %{key: key, label: "dns://svc:1 (#{key})", host: key, port: 1, name: "svc"}

  test "diff: gone slots, and new endpoints numbered on from the highest slot kept" do
    current = %{1 => ep("a"), 2 => ep("b"), 3 => ep("c")}
    assert Endpoints.diff(current, [ep("a"), ep("b"), ep("c")]) == {[], []}

    assert Endpoints.diff(current, [ep("a"), ep("d"), ep("b"), ep("e")]) ==
             {[{3, ep("c")}], [{3, ep("d")}, {4, ep("e")}]}

    assert Endpoints.diff(current, [ep("c")]) == {[{1, ep("a")}, {2, ep("b")}], []}
    assert Endpoints.diff(current, []) == {[{1, ep("a")}, {2, ep("b")}, {3, ep("c")}], []}
    assert Endpoints.diff(%{}, [ep("a"), ep("b")]) == {[], [{1, ep("a")}, {2, ep("b")}]}
  end

  test "with_errors: each endpoint's last error in slot order, then the DNS errors" do
    endpoints = %{2 => ep("b"), 1 => ep("a")}
    error = %{worker_id: nil, reason: :no_endpoints, output: ""}

    assert Endpoints.with_errors(error, endpoints, %{1 => :econnrefused}, [
             {"dns://x:1", :nxdomain}
           ]) ==
             Map.put(error, :endpoints, [
               {ep("a").label, :econnrefused},
               {ep("b").label, nil},
               {"dns://x:1", :nxdomain}
             ])
  end

  test "no_endpoints: the failure names each name's DNS error" do
    assert %{worker_id: nil, reason: :no_endpoints, output: output} =
             Endpoints.no_endpoints([{"svc", :nxdomain}])

    assert output =~ "nxdomain"
  end
end
