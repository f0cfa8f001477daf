defmodule Krait.Pool.Endpoints do
  @moduledoc """
  A remote pool's `:endpoints`: `"host:port"` (one worker) or `"dns://name:port"` (one worker per
  address the name resolves to, such as a Kubernetes headless Service). The scheduler resolves them
  when it starts and every `:dns_interval` ms after (`resolve/1`), adding a worker for each new
  address and retiring the workers of addresses that went away.

  A worker reached through a DNS name dials the address but verifies the TLS certificate against
  the name (the name a Service's certificate carries), sent as SNI.
  """

  @typedoc "One worker's endpoint: `key` identifies it across resolutions, `label` shows it."
  @type t :: %{
          key: String.t(),
          label: String.t(),
          host: String.t(),
          port: 1..65_535,
          name: String.t() | nil
        }

  @doc "Parses one endpoint spec: `{:ok, {:static | :dns, host, port}}` or `:error`."
  @spec parse(String.t()) :: {:ok, {:static | :dns, String.t(), 1..65_535}} | :error
  def parse("dns://" <> rest) do
    with {:ok, {host, port}} <- host_port(rest), do: {:ok, {:dns, host, port}}
  end

  def parse(spec) do
    with {:ok, {host, port}} <- host_port(spec), do: {:ok, {:static, host, port}}
  end

  defp host_port(text) do
    with [_, host, port] <- Regex.run(~r/^\[?([^\[\]\/]+?)\]?:(\d+)$/, text),
         {port, ""} when port in 1..65_535 <- Integer.parse(port) do
      {:ok, {host, port}}
    else
      _ -> :error
    end
  end

  @doc "Whether any spec is a DNS name to re-resolve."
  @spec dns?([String.t()]) :: boolean()
  def dns?(specs), do: Enum.any?(specs, &String.starts_with?(&1, "dns://"))

  @doc """
  Resolves the specs (already validated by `parse/1`): the endpoints, in spec order and addresses
  sorted, and the DNS errors as `[{spec, reason}]` (a name that does not resolve gives no endpoint).
  """
  @spec resolve([String.t()]) :: {[t()], [{String.t(), term()}]}
  def resolve(specs) do
    {endpoints, errors} =
      Enum.reduce(specs, {[], []}, fn spec, {acc, errs} ->
        case parse(spec) do
          {:ok, {:static, host, port}} ->
            label = "#{host}:#{port}"
            {[%{key: label, label: label, host: host, port: port, name: nil} | acc], errs}

          {:ok, {:dns, name, port}} ->
            case addresses(name) do
              {:ok, ips} ->
                found =
                  for ip <- ips do
                    address = :inet.ntoa(ip) |> to_string()
                    label = "#{name}:#{port} (#{address})"

                    %{
                      key: "#{address}:#{port}",
                      label: label,
                      host: address,
                      port: port,
                      name: name
                    }
                  end

                {Enum.reverse(found) ++ acc, errs}

              {:error, reason} ->
                {acc, [{spec, reason} | errs]}
            end
        end
      end)

    {endpoints |> Enum.reverse() |> Enum.uniq_by(& &1.key), Enum.reverse(errors)}
  end

  defp addresses(name) do
    name = to_charlist(name)

    case {:inet.getaddrs(name, :inet), :inet.getaddrs(name, :inet6)} do
      {{:error, reason}, {:error, _}} -> {:error, reason}
      {v4, v6} -> {:ok, Enum.sort(ok_list(v4)) ++ Enum.sort(ok_list(v6))}
    end
  end

  @doc """
  A resolution's changes against the endpoints in use (`slot => endpoint`): `{gone, added}`, the
  slots whose endpoint is no longer `found`, and each new endpoint with its slot (numbered on from
  the highest slot kept).
  """
  @spec diff(%{pos_integer() => t()}, [t()]) :: {[{pos_integer(), t()}], [{pos_integer(), t()}]}
  def diff(current, found) do
    keys = MapSet.new(found, & &1.key)
    {kept, gone} = current |> Enum.sort() |> Enum.split_with(fn {_, e} -> e.key in keys end)
    in_use = MapSet.new(kept, fn {_, e} -> e.key end)
    top = kept |> Enum.map(&elem(&1, 0)) |> Enum.max(fn -> 0 end)
    new = Enum.reject(found, &MapSet.member?(in_use, &1.key))
    {gone, Enum.with_index(new, fn e, i -> {top + i + 1, e} end)}
  end

  @doc "The pool's failure when no endpoint resolves (`dns_errors`: each name's error)."
  @spec no_endpoints([{String.t(), term()}]) :: map()
  def no_endpoints(dns_errors),
    do: %{
      worker_id: nil,
      reason: :no_endpoints,
      output: "no endpoint resolves: #{inspect(dns_errors)}"
    }

  @doc """
  A remote pool's failure `error` with every endpoint's last start error (`last_errors`: slot =>
  reason or nil) and the names that did not resolve.
  """
  @spec with_errors(map(), %{pos_integer() => t()}, %{pos_integer() => term()}, [
          {String.t(), term()}
        ]) ::
          map()
  def with_errors(error, endpoints, last_errors, dns_errors) do
    errors = for {slot, e} <- Enum.sort(endpoints), do: {e.label, last_errors[slot]}
    Map.put(error, :endpoints, errors ++ dns_errors)
  end

  defp ok_list({:ok, list}), do: list
  defp ok_list(_), do: []
end
