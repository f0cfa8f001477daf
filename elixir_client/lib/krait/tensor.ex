defmodule Krait.Tensor do
  @moduledoc """
  A NumPy array as it travels between Python and Elixir: `application/x-npy` chunks and results decode
  to a `%Krait.Tensor{}`, and a `%Krait.Tensor{}` passed as a tool argument travels as `.npy`.

    * `dtype` - `:bool`, `:int8`..`:int64`, `:uint8`..`:uint64`, `:float16`, `:float32`, `:float64`,
      `:complex64`, `:complex128`; any other NumPy dtype keeps its descr string (`"<U5"`).
    * `shape` - a tuple, as in NumPy (`{}` for a scalar).
    * `data` - the raw element bytes, C order unless `fortran_order` is true. Decoding does not copy:
      `data` is a sub-binary of the received message.
    * `byte_order` - `:little`, `:big` or `:none` (one-byte types).

  With Nx: `Nx.from_binary(t.data, Krait.Tensor.nx_type(t)) |> Nx.reshape(t.shape)`.
  """

  defstruct dtype: :float64, shape: {}, data: <<>>, byte_order: :little, fortran_order: false

  @type dtype ::
          :bool
          | :int8
          | :int16
          | :int32
          | :int64
          | :uint8
          | :uint16
          | :uint32
          | :uint64
          | :float16
          | :float32
          | :float64
          | :complex64
          | :complex128
          | String.t()

  @type t :: %__MODULE__{
          dtype: dtype(),
          shape: tuple(),
          data: binary(),
          byte_order: :little | :big | :none,
          fortran_order: boolean()
        }

  @magic "\x93NUMPY"

  # {kind, item size} of the .npy descr <-> dtype atom
  @dtypes [
    {"b", 1, :bool},
    {"i", 1, :int8},
    {"i", 2, :int16},
    {"i", 4, :int32},
    {"i", 8, :int64},
    {"u", 1, :uint8},
    {"u", 2, :uint16},
    {"u", 4, :uint32},
    {"u", 8, :uint64},
    {"f", 2, :float16},
    {"f", 4, :float32},
    {"f", 8, :float64},
    {"c", 8, :complex64},
    {"c", 16, :complex128}
  ]

  @doc """
  Builds a tensor from raw little-endian element bytes, checking that their size matches the shape.

      iex> t = Krait.Tensor.new(<<1.0::float-32-little, 2.0::float-32-little>>, :float32, {2})
      iex> t.shape
      {2}
  """
  @spec new(binary(), dtype(), tuple() | [non_neg_integer()]) :: t()
  def new(data, dtype, shape) when is_binary(data) do
    shape = if is_list(shape), do: List.to_tuple(shape), else: shape
    tensor = %__MODULE__{dtype: dtype, shape: shape, data: data, byte_order: default_order(dtype)}
    expected = element_count(tensor) * item_size(dtype)

    if byte_size(data) != expected do
      raise ArgumentError,
            "tensor data is #{byte_size(data)} bytes, shape #{inspect(shape)} of #{dtype} needs #{expected}"
    end

    tensor
  end

  @doc """
  Builds a one-dimensional tensor from a list of numbers (or booleans for `:bool`).

      iex> Krait.Tensor.from_list([1, 2, 3], :int32) |> Krait.Tensor.to_list()
      [1, 2, 3]
  """
  @spec from_list([number() | boolean()], dtype()) :: t()
  def from_list(list, dtype) when is_list(list) do
    data = for x <- list, into: <<>>, do: encode_element(x, dtype)
    new(data, dtype, {length(list)})
  end

  @doc """
  The elements as a flat list, in storage order (numeric and boolean dtypes, either byte order).
  Complex elements come back as `{re, im}`.
  """
  @spec to_list(t()) :: [number() | boolean() | {float(), float()}]
  def to_list(%__MODULE__{dtype: dtype, data: data, byte_order: order}) do
    size = item_size(dtype)
    for <<el::binary-size(size) <- data>>, do: decode_element(el, dtype, order)
  end

  @doc "The number of elements (the product of the shape)."
  @spec element_count(t()) :: non_neg_integer()
  def element_count(%__MODULE__{shape: shape}),
    do: shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))

  @doc "The Nx type of a tensor's dtype (`{:f, 32}` for `:float32`, `{:u, 8}` for `:bool`)."
  @spec nx_type(t() | dtype()) :: {:s | :u | :f | :c, pos_integer()}
  def nx_type(%__MODULE__{dtype: dtype}), do: nx_type(dtype)
  def nx_type(:bool), do: {:u, 8}

  for {kind, size, dtype} <- @dtypes, dtype != :bool do
    nx_kind = %{"i" => :s, "u" => :u, "f" => :f, "c" => :c}[kind]
    def nx_type(unquote(dtype)), do: {unquote(nx_kind), unquote(size * 8)}
  end

  @doc """
  Parses a `.npy` document (versions 1, 2 and 3). The tensor's `data` is a sub-binary of `npy`.
  """
  @spec from_npy(binary()) :: {:ok, t()} | {:error, String.t()}
  def from_npy(<<@magic, major, _minor, rest::binary>> = npy) do
    with {:ok, header, header_end} <- split_header(major, rest),
         {:ok, descr} <- header_field(header, ~r/'descr':\s*'([^']*)'/),
         {:ok, fortran} <- header_field(header, ~r/'fortran_order':\s*(True|False)/),
         {:ok, shape_text} <- header_field(header, ~r/'shape':\s*\(([^)]*)\)/),
         {:ok, shape} <- parse_shape(shape_text),
         {dtype, order, size} <- parse_descr(descr) do
      offset = 8 + header_end
      tensor = %__MODULE__{dtype: dtype, shape: shape, byte_order: order}
      nbytes = element_count(tensor) * size

      if byte_size(npy) - offset >= nbytes do
        {:ok,
         %{tensor | data: binary_part(npy, offset, nbytes), fortran_order: fortran == "True"}}
      else
        {:error, "npy data is shorter than its shape says"}
      end
    end
  end

  def from_npy(_), do: {:error, "not a .npy document"}

  @known_dtypes for {_kind, _size, dtype} <- @dtypes, do: dtype

  @doc """
  Checks that a tensor can be sent: a known dtype (or a `.npy` descr string), a shape of
  non-negative integers, a byte order, and data whose size matches. `:ok` or `{:error, message}`.
  """
  @spec check(term()) :: :ok | {:error, String.t()}
  def check(%__MODULE__{dtype: dtype, shape: shape, data: data, byte_order: order} = t) do
    cond do
      not (dtype in @known_dtypes or descr_string?(dtype)) ->
        {:error, "unknown tensor dtype #{inspect(dtype)}; known: #{inspect(@known_dtypes)}"}

      not (is_tuple(shape) and Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0))) ->
        {:error, "tensor shape must be a tuple of non-negative integers, got: #{inspect(shape)}"}

      order not in [:little, :big, :none] ->
        {:error, "tensor byte_order must be :little, :big or :none, got: #{inspect(order)}"}

      not is_binary(data) ->
        {:error, "tensor data must be a binary"}

      byte_size(data) != element_count(t) * item_size(dtype) ->
        {:error,
         "tensor data is #{byte_size(data)} bytes, shape #{inspect(shape)} of #{inspect(dtype)} " <>
           "needs #{element_count(t) * item_size(dtype)}"}

      true ->
        :ok
    end
  end

  def check(other), do: {:error, "not a Krait.Tensor: #{inspect(other, limit: 5)}"}

  defp descr_string?(dtype) when is_binary(dtype) do
    match?({_, _, size} when is_integer(size) and size > 0, parse_descr(dtype))
  rescue
    _ -> false
  end

  defp descr_string?(_), do: false

  @doc "Encodes a tensor as a `.npy` document (version 1.0 when the header fits, else 2.0)."
  @spec to_npy(t()) :: iodata()
  def to_npy(%__MODULE__{} = t) do
    fortran = if t.fortran_order, do: "True", else: "False"

    dict =
      "{'descr': '#{descr(t)}', 'fortran_order': #{fortran}, 'shape': #{format_shape(t.shape)}, }"

    # The header is padded with spaces so that the data starts on a 64-byte boundary.
    {version, len_size} = if byte_size(dict) + 12 < 65_536, do: {1, 2}, else: {2, 4}
    unpadded = 6 + 2 + len_size + byte_size(dict) + 1
    pad = rem(64 - rem(unpadded, 64), 64)
    header_len = byte_size(dict) + pad + 1
    len = <<header_len::little-size(len_size * 8)>>
    [@magic, version, 0, len, dict, :binary.copy(" ", pad), "\n", t.data]
  end

  defp split_header(1, <<len::little-16, header::binary-size(len), _::binary>>),
    do: {:ok, header, 2 + len}

  defp split_header(v, <<len::little-32, header::binary-size(len), _::binary>>) when v in [2, 3],
    do: {:ok, header, 4 + len}

  defp split_header(_, _), do: {:error, "unsupported or truncated .npy header"}

  defp header_field(header, regex) do
    case Regex.run(regex, header, capture: :all_but_first) do
      [value] -> {:ok, value}
      _ -> {:error, "invalid .npy header: #{inspect(header)}"}
    end
  end

  defp parse_shape(text) do
    text
    |> String.split(",", trim: true)
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == ""))
    |> Enum.reduce_while({:ok, []}, fn dim, {:ok, acc} ->
      case Integer.parse(dim) do
        {n, ""} when n >= 0 -> {:cont, {:ok, [n | acc]}}
        _ -> {:halt, {:error, "invalid .npy shape: (#{text})"}}
      end
    end)
    |> case do
      {:ok, dims} -> {:ok, dims |> Enum.reverse() |> List.to_tuple()}
      error -> error
    end
  end

  defp parse_descr(<<order_char, kind::binary-size(1), size_text::binary>> = descr) do
    order =
      case order_char do
        ?< -> :little
        ?> -> :big
        ?| -> :none
        ?= -> :erlang.system_info(:endian)
        _ -> nil
      end

    case Integer.parse(size_text) do
      {count, ""} when order != nil ->
        # A unicode string dtype ("<U5") counts 4-byte code points, every other kind counts bytes.
        size = if kind == "U", do: count * 4, else: count
        order = if size == 1, do: :none, else: order
        {dtype_for(kind, size, descr), order, size}

      _ ->
        {:error, "unsupported .npy dtype #{inspect(descr)}"}
    end
  end

  defp parse_descr(descr), do: {:error, "unsupported .npy dtype #{inspect(descr)}"}

  for {kind, size, dtype} <- @dtypes do
    defp dtype_for(unquote(kind), unquote(size), _descr), do: unquote(dtype)
    defp item_size(unquote(dtype)), do: unquote(size)
    defp kind_of(unquote(dtype)), do: unquote(kind)
  end

  # Dtypes Krait has no atom for (strings, datetimes...) keep their descr; their size is in it.
  defp dtype_for(_kind, _size, descr), do: descr

  defp item_size(descr) when is_binary(descr) do
    {_, _, size} = parse_descr(descr)
    size
  end

  @doc """
  The NumPy dtype string of a tensor (what NumPy's `dtype.str` gives: `"<f4"`, `"|u1"`, `">i8"`).

      iex> Krait.Tensor.dtype_str(Krait.Tensor.new(<<1.0::float-32-little>>, :float32, {1}))
      "<f4"
  """
  @spec dtype_str(t()) :: String.t()
  def dtype_str(%__MODULE__{} = t), do: descr(t)

  defp descr(%__MODULE__{dtype: dtype}) when is_binary(dtype), do: dtype

  defp descr(%__MODULE__{dtype: dtype, byte_order: order}) do
    size = item_size(dtype)
    prefix = if size == 1, do: "|", else: if(order == :big, do: ">", else: "<")
    "#{prefix}#{kind_of(dtype)}#{size}"
  end

  defp default_order(dtype) do
    if is_atom(dtype) and item_size(dtype) == 1, do: :none, else: :little
  end

  defp format_shape({}), do: "()"
  defp format_shape({n}), do: "(#{n},)"
  defp format_shape(shape), do: "(" <> Enum.join(Tuple.to_list(shape), ", ") <> ")"

  defp encode_element(x, :bool), do: if(x in [true, 1], do: <<1>>, else: <<0>>)
  defp encode_element(x, :float16), do: <<x::float-little-16>>
  defp encode_element(x, :float32), do: <<x::float-little-32>>
  defp encode_element(x, :float64), do: <<x::float-little-64>>

  defp encode_element(x, dtype) do
    bits = item_size(dtype) * 8

    case kind_of(dtype) do
      "i" -> <<x::signed-little-size(bits)>>
      "u" -> <<x::unsigned-little-size(bits)>>
      _ -> raise ArgumentError, "from_list/2 does not support #{inspect(dtype)}"
    end
  end

  defp decode_element(<<b>>, :bool, _), do: b != 0

  defp decode_element(el, dtype, order) when is_atom(dtype) do
    bits = item_size(dtype) * 8

    case {kind_of(dtype), order} do
      {"i", :big} -> decode_int(el, bits, :big, :signed)
      {"i", _} -> decode_int(el, bits, :little, :signed)
      {"u", :big} -> decode_int(el, bits, :big, :unsigned)
      {"u", _} -> decode_int(el, bits, :little, :unsigned)
      {"f", order} -> decode_float(el, bits, order)
      {"c", order} -> decode_complex(el, div(bits, 2), order)
    end
  end

  defp decode_element(_el, dtype, _order),
    do: raise(ArgumentError, "to_list/1 does not support dtype #{inspect(dtype)}")

  defp decode_int(el, bits, :big, :signed) do
    <<x::signed-big-size(bits)>> = el
    x
  end

  defp decode_int(el, bits, :little, :signed) do
    <<x::signed-little-size(bits)>> = el
    x
  end

  defp decode_int(el, bits, :big, :unsigned) do
    <<x::unsigned-big-size(bits)>> = el
    x
  end

  defp decode_int(el, bits, :little, :unsigned) do
    <<x::unsigned-little-size(bits)>> = el
    x
  end

  defp decode_float(el, bits, :big) do
    <<x::float-big-size(bits)>> = el
    x
  end

  defp decode_float(el, bits, _) do
    <<x::float-little-size(bits)>> = el
    x
  end

  defp decode_complex(el, bits, order) do
    half = div(bits, 8)
    <<re::binary-size(half), im::binary-size(half)>> = el
    {decode_float(re, bits, order), decode_float(im, bits, order)}
  end
end
