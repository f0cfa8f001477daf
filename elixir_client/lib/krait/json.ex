defmodule Krait.JSON do
  @moduledoc """
  JSON for tool arguments and `application/json` payloads, with whichever library the system has.

  The backend is chosen when Krait is compiled, in this order:

    1. `config :krait, json_library: Mod` - any module with `decode!/1` and `encode_to_iodata!/1`
       (for example `Jason`);
    2. Elixir's built-in `JSON` module (Elixir 1.18 and later);
    3. `:jiffy` (Debian ships it as `erlang-jiffy`; Krait's `mix.exs` then starts it);
    4. `Jason`, if the application depends on it.

  An application that fetches from hex and runs Elixir older than 1.18 adds `{:jason, "~> 1.4"}` to its
  deps (and, to be explicit, `config :krait, json_library: Jason`), then recompiles Krait
  (`mix deps.compile krait --force`).

  Decoding keeps integers exact, turns `null` into `nil` and object keys into strings.
  Encoding accepts maps with atom or string keys, lists, numbers, strings, booleans, `nil` and atoms.
  """

  @configured Application.compile_env(:krait, :json_library)

  @backend (cond do
              @configured != nil -> {:module, @configured}
              Version.match?(System.version(), ">= 1.18.0") -> {:module, JSON}
              Code.ensure_loaded?(:jiffy) -> :jiffy
              Code.ensure_loaded?(Jason) -> {:module, Jason}
              true -> :none
            end)

  @doc "The backend in use: `:jiffy`, `{:module, mod}` or `:none`."
  @spec backend() :: :jiffy | {:module, module()} | :none
  def backend, do: @backend

  @doc "Decodes a JSON document; raises on invalid JSON."
  @spec decode!(binary()) :: term()
  case @backend do
    :jiffy -> def decode!(binary), do: :jiffy.decode(binary, [:return_maps, :use_nil])
    {:module, mod} -> def decode!(binary), do: unquote(mod).decode!(binary)
    :none -> def decode!(_binary), do: raise("Krait.JSON: no JSON library available")
  end

  @doc "Encodes a term as JSON iodata; raises on terms JSON cannot represent."
  @spec encode!(term()) :: iodata()
  case @backend do
    :jiffy -> def encode!(term), do: :jiffy.encode(term, [:use_nil])
    {:module, mod} -> def encode!(term), do: unquote(mod).encode_to_iodata!(term)
    :none -> def encode!(_term), do: raise("Krait.JSON: no JSON library available")
  end

  @doc "Decodes a JSON document: `{:ok, term}` or `{:error, reason}`."
  @spec decode(binary()) :: {:ok, term()} | {:error, term()}
  def decode(binary) do
    {:ok, decode!(binary)}
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  @doc """
  Decodes many JSON documents with one call of the backend (joined as one array: a stream's batch of
  small chunks pays the backend's fixed cost once): `{:ok, terms}` in order, or `:error` when the
  array does not decode into exactly one term per document (decode them one by one to tell which).
  """
  @spec decode_many([binary()]) :: {:ok, [term()]} | :error
  def decode_many(documents) do
    count = length(documents)

    case decode(IO.iodata_to_binary(["[", Enum.intersperse(documents, ","), "]"])) do
      {:ok, terms} when is_list(terms) and length(terms) == count -> {:ok, terms}
      _ -> :error
    end
  end

  @doc "Encodes a term as JSON: `{:ok, iodata}` or `{:error, reason}`."
  @spec encode(term()) :: {:ok, iodata()} | {:error, term()}
  def encode(term) do
    {:ok, encode!(term)}
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end
end
