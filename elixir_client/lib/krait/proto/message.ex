defmodule Krait.Proto.Message do
  @moduledoc """
  Defines a proto3 message module from its field list: the struct, its type, and
  `encode/1` and `decode/1`.

      use Krait.Proto.Message,
        fields: [name: {1, :string}, tools: {2, {:repeated, Krait.Proto.ToolInfo}}]

  Field types: `:string`, `:bytes`, `:bool`, `:int32`, `:int64`, `:uint64`,
  `{:message, Module}`, `{:repeated, Module}`, `{:map, :string}` (map<string, string>)
  and `{:map, Module}` (map<string, Message>). Encoding skips default values, as proto3
  does; decoding skips unknown fields and keeps strings and bytes as sub-binaries.

  Hand-written protobuf instead of generated code: no protobuf library for Elixir is
  available here (hex.pm is unreachable), and the contract is small. The hot messages
  (`Krait.Proto.ToolChunk`, `Krait.Proto.ToolChunkBatch`) do not use this macro: their
  decoders are written out with clause-head binary matching for speed.
  """

  @doc false
  defmacro __using__(opts) do
    fields = Keyword.fetch!(opts, :fields)
    # Expand module aliases written in the field types.
    fields =
      Enum.map(fields, fn {name, {num, type}} ->
        {name, {num, expand_type(type, __CALLER__)}}
      end)

    struct_fields = for {name, {_num, type}} <- fields, do: {name, default(type)}
    type_fields = for {name, {_num, type}} <- fields, do: {name, typespec(type)}
    repeated = for {name, {_num, {:repeated, _}}} <- fields, do: name

    encoders = for {name, {num, type}} <- fields, do: encoder(name, num, type)
    decoders = for {name, {num, type}} <- fields, do: decoder(name, num, type)

    quote do
      alias Krait.Proto.Wire

      defstruct unquote(Macro.escape(struct_fields))

      @type t :: %__MODULE__{unquote_splicing(type_fields)}

      @doc "Encodes the message to iodata (proto3 wire format)."
      @spec encode(t) :: iodata
      def encode(%__MODULE__{} = var!(message)) do
        _ = var!(message)
        unquote(encoders)
      end

      @doc """
      Decodes the message from `binary`. Raises `Krait.Proto.DecodeError` on malformed
      input; unknown fields are skipped.
      """
      @spec decode(binary) :: t
      def decode(binary) when is_binary(binary) do
        message = decode_fields(binary, %__MODULE__{})
        unquote(finalize(repeated))
      end

      defp decode_fields(<<>>, message), do: message

      defp decode_fields(binary, message) do
        {num, raw, rest} = Wire.decode_field(binary)
        decode_fields(rest, put_field(num, raw, message))
      end

      unquote_splicing(decoders)

      defp put_field(_num, _raw, message), do: message
    end
  end

  defp expand_type({kind, module}, env)
       when kind in [:message, :repeated, :map] and not is_atom(module),
       do: {kind, Macro.expand(module, env)}

  defp expand_type(type, _env), do: type

  defp default(:string), do: ""
  defp default(:bytes), do: ""
  defp default(:bool), do: false
  defp default(type) when type in [:int32, :int64, :uint64], do: 0
  defp default({:message, _}), do: nil
  defp default({:repeated, _}), do: []
  defp default({:map, _}), do: %{}

  defp typespec(:string), do: quote(do: String.t())
  defp typespec(:bytes), do: quote(do: binary)
  defp typespec(:bool), do: quote(do: boolean)
  defp typespec(:uint64), do: quote(do: non_neg_integer)
  defp typespec(type) when type in [:int32, :int64], do: quote(do: integer)
  defp typespec({:message, mod}), do: quote(do: unquote(mod).t() | nil)
  defp typespec({:repeated, mod}), do: quote(do: [unquote(mod).t()])
  defp typespec({:map, :string}), do: quote(do: %{optional(String.t()) => String.t()})
  defp typespec({:map, mod}), do: quote(do: %{optional(String.t()) => unquote(mod).t()})

  defp encoder(name, num, {:message, mod}) do
    quote do
      case var!(message).unquote(name) do
        nil -> []
        value -> Wire.delimited(unquote(num), unquote(mod).encode(value))
      end
    end
  end

  defp encoder(name, num, {:repeated, mod}) do
    quote do
      for value <- var!(message).unquote(name),
          do: Wire.delimited(unquote(num), unquote(mod).encode(value))
    end
  end

  defp encoder(name, num, {:map, :string}) do
    quote do
      Wire.map_field(unquote(num), var!(message).unquote(name), &Wire.field(2, :string, &1))
    end
  end

  defp encoder(name, num, {:map, mod}) do
    quote do
      Wire.map_field(unquote(num), var!(message).unquote(name), fn value ->
        Wire.delimited(2, unquote(mod).encode(value))
      end)
    end
  end

  defp encoder(name, num, type) do
    quote do
      Wire.field(unquote(num), unquote(type), var!(message).unquote(name))
    end
  end

  defp decoder(name, num, {:message, mod}) do
    quote do
      defp put_field(unquote(num), {:bytes, value}, message),
        do: %{message | unquote(name) => unquote(mod).decode(value)}
    end
  end

  defp decoder(name, num, {:repeated, mod}) do
    quote do
      defp put_field(unquote(num), {:bytes, value}, message),
        do: %{message | unquote(name) => [unquote(mod).decode(value) | message.unquote(name)]}
    end
  end

  defp decoder(name, num, {:map, :string}) do
    quote do
      defp put_field(unquote(num), {:bytes, entry}, message) do
        {key, value} =
          Wire.map_entry(
            entry,
            fn raw ->
              case Wire.scalar(raw, :string) do
                :skip -> ""
                value -> value
              end
            end,
            ""
          )

        %{message | unquote(name) => Map.put(message.unquote(name), key, value)}
      end
    end
  end

  defp decoder(name, num, {:map, mod}) do
    quote do
      defp put_field(unquote(num), {:bytes, entry}, message) do
        {key, value} =
          Wire.map_entry(
            entry,
            fn
              {:bytes, value} -> unquote(mod).decode(value)
              _ -> struct(unquote(mod))
            end,
            struct(unquote(mod))
          )

        %{message | unquote(name) => Map.put(message.unquote(name), key, value)}
      end
    end
  end

  defp decoder(name, num, type) do
    quote do
      defp put_field(unquote(num), raw, message) do
        case Wire.scalar(raw, unquote(type)) do
          :skip -> message
          value -> %{message | unquote(name) => value}
        end
      end
    end
  end

  defp finalize([]), do: quote(do: message)

  defp finalize(repeated) do
    updates = for name <- repeated, do: {name, quote(do: Enum.reverse(message.unquote(name)))}
    quote(do: %{message | unquote_splicing(updates)})
  end
end
